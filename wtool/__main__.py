from wtool.cli import main

main()

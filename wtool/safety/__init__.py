"""Guards for untrusted input, used before anything else touches a file. No TensorFlow.

Owns: size and count limits (`limits`, the `--max-*` options), zip/archive checks
(`archive`), HDF5 and zip guards against links, external storage and bombs (`guards`,
`h5walk`), JSON parsing with caps (`safejson`), the config check that decides whether a
saved config needs code (`config_check`), the cheap build-size guard (`buildguard`) and the
CRC-32 of the integrity checks (`crc`: ISA-L's when installed, else zlib's).
May import: the foundation modules (`wtool.errors`, `wtool.fileio`, `wtool.text`) only.
HDF5 filter plugins are locked out by `wtool/__init__.py`, before anything loads h5py.
"""

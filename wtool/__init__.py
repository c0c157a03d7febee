"""wtool: everything people do with a Keras model's weights."""

__version__ = "0.1.0"

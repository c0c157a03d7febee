"""Building Keras model graphs from files: the one place a `keras.Model` is made or saved.

Owns: importing Keras quietly (`model.import_keras`), checking and loading a file's graph
and assigning its weights by canonical path (`model`), translating Keras 1/2 and tf.keras
configs to Keras 3 without running code (`legacy_config`), converting old layers' weight
arrays (`legacy_weights`), the compact `--layers` spec of `wtool new` (`spec`), the user's
`--custom-objects` code (`custom`) and folders of images read by Keras (`folders`).
May import: `wtool.data`, `wtool.store`, `wtool.safety` and the foundation modules. TensorFlow is
imported lazily, inside functions.
"""

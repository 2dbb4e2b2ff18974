"""The configs that ship with videomar_jax (setup.py installs this folder as the package
`videomar_jax.configs`). They are files, read by path: `--config=videomar:tiny` on the
command line, `videomar_jax.config_files.load_config("videomar:tiny")` in Python.
"""

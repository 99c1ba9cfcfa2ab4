"""Config schema and defaults (no JAX): the ml_collections defaults every `configs/*.py` file starts
from, the named choices of every enumerated field, validation by dotted key, loading a config file
by path, and merging a saved run config onto today's defaults."""
from jaxdiff.config.defaults import get_config, lora_head, model_init
from jaxdiff.config.files import load_config_file, with_defaults
from jaxdiff.config.schema import ConfigValueError, length_edges, validate

__all__ = ["ConfigValueError", "get_config", "length_edges", "load_config_file", "lora_head", "model_init",
           "validate", "with_defaults"]

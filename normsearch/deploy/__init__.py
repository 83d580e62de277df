"""Using a finalized model (`normsearch finalize ... -o DIR`): `load_model(DIR)` for Python, and the library
side of `normsearch evaluate` and `normsearch predict`."""

from normsearch.deploy.model import Preprocess, SeedEnsemble, load_model

__all__ = ["Preprocess", "SeedEnsemble", "load_model"]

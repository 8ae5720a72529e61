"""sparsemm: the application package (CLI and composition root); the math lives in
``sparsemm.solver`` (directory ``solver/``)."""

__version__ = "0.1.0"

"""``python -m sparsemm`` runs the CLI."""

from .cli import main

raise SystemExit(main())

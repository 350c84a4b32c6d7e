"""``python -m frpo.judges fit LABELLED.jsonl [OUT.json]``: fit the MiniLM refusal classifier (see minilm.py)."""

from .minilm import _main

raise SystemExit(_main())

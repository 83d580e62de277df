"""Domains for the search: the built-in `synthetic` benchmark, corruptions, and image folders."""

from __future__ import annotations

from normsearch.data.corruptions import CORRUPTIONS, corrupt, corrupt_domain
from normsearch.data.domains import Domain, DomainSet
from normsearch.data.synthetic import CLASSES, STYLES, make_synthetic

__all__ = [
    "CLASSES",
    "CORRUPTIONS",
    "STYLES",
    "Domain",
    "DomainSet",
    "corrupt",
    "corrupt_domain",
    "make_synthetic",
]

"""HTTP adapters: one sub-package per standard the platform speaks (NGSI-LD, ...)."""

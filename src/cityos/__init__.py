"""cityos: an open-source city data platform (都市OS) built around an NGSI-LD context broker."""

__version__ = "0.1.0"

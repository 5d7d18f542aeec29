"""Sensor ingestion: LoRaWAN network servers to entities (see ``model`` for the seam)."""

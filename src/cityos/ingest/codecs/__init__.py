"""Payload codecs: TTN-style JavaScript (QuickJS) and Python, behind one ``Codec`` protocol
(see ``cityos.ingest.model.Codec``)."""

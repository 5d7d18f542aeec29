"""STORAGE SEAM: the broker talks to a narrow ``Storage`` protocol; backends live here."""

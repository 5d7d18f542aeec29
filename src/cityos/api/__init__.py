"""HTTP adapters of the standards; they translate requests into service calls and back."""

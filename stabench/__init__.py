"""stabench: measure which training-stabilization settings make diffusion models train well."""

__version__ = "0.1.0"

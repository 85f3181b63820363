"""nbdesk: a desktop studio for Nano Banana image models."""
__version__ = "0.1.0"

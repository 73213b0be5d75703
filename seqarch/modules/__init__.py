"""Building blocks shared by mixers and models."""

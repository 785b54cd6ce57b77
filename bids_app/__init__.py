"""bids-connectome: fMRIPrep derivatives -> denoised region signals -> connectomes (BIDS derivatives)."""

__version__ = "0.1.0"

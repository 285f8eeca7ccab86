"""bdcli: plant, remove and measure backdoors in pre-trained language models."""

__version__ = "0.1.0"

"""ett: inspect, stretch, squeeze, train and find elastic lottery tickets.

Importing ``ettcli`` is cheap: nothing here imports torch.
"""

__version__ = "0.1.0"

"""imbadv: how class imbalance changes CNNs' vulnerability to gradient-sign attacks (Possas and Zhou)."""

__version__ = "0.1.0"

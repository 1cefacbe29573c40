"""Reproduction of the seed's runs (`python -m experiments.reproduce`) and their loss curves (`experiments.plot`)."""

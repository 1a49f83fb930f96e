"""Reproduction experiments for SPP (Lee et al., ICLR 2020) and SNIP (Lee et al., ICLR 2019)."""

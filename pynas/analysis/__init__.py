"""Analyses of searches and architectures: per-edge costs and wiring evolution
(the wiring-evolution paper), cell width/depth, random variants and loss
landscapes (the ICLR 2020 cell-analysis paper)."""

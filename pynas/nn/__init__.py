"""Drop-in NAS modules: candidate operations, MixedOp, cells and networks."""
from .cells import SearchCell, cell_edges, edge_name
from .child import EvalCell, EvalNetwork
from .choice import LayerChoice, arch_parameters, export, layer_choices, make_searchable, weight_parameters
from .mixed_op import MixedOp
from .nb201 import NB201Network
from .networks import SearchNetwork, forward_with_weights, minimal_cell_network
from .ops import OPS, build_op, register_op
from .spaces import DARTS, DARTS_WITHOUT_NONE, NB201, S1, S2, S3, S4, SearchSpace, get_space, s1, s1_from_alphas

__all__ = ["DARTS", "DARTS_WITHOUT_NONE", "EvalCell", "EvalNetwork", "LayerChoice", "arch_parameters", "export",
           "layer_choices", "make_searchable", "weight_parameters", "MixedOp", "NB201", "NB201Network", "OPS", "S1", "S2", "S3", "S4", "SearchCell", "SearchNetwork",
           "SearchSpace", "build_op", "cell_edges", "edge_name", "forward_with_weights", "get_space", "minimal_cell_network", "register_op",
           "s1", "s1_from_alphas"]

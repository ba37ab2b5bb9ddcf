"""Multi-Prize Tickets as artifacts: freeze, save, reload exactly, run, summarise.

A ticket is what a biprop run found: per prunable layer the mask, the signs of the kept
random weights and one gain alpha, plus the BatchNorm arrays; a file of about one bit per
weight that evaluates to the training-time model's logits without scores or optimizer
state. One module per job, each importing only those above it in this list:

    core         Ticket, LayerTicket, TicketError; variable trees and model options
    seed         the PRNG key of a run and the regeneration of its random weights
    inference    a ticket as a dense-kernel model: predictions, accuracy, run comparison
    bitpack      bit-packed XNOR-popcount inference of binary-activation tickets
    freeze       masks and alphas exactly as training computes them: make_ticket
    format       the file: ticket_bytes / save_ticket, ticket_from_bytes / load_ticket
    summary      sizes, bits per weight and MACs as a dict or a Larq-style table
    run          tickets of training workdirs (checkpoints, config, result)
    torch_import tickets of the original PyTorch code's checkpoints
    cli          ``python -m mpt_jax.ticket export|evaluate|summary|import-torch``

The names below are the library API: ``from mpt_jax import ticket as T``, then e.g.
``T.load_ticket(path)``, ``T.predict_fn(ticket)(images)``,
``print(T.summary_table(T.make_ticket(name, opts, variables, image_shape)))``. (``T.summary``
is the function; its module is ``mpt_jax.ticket.summary`` in ``sys.modules``: import the
functions from it by name.)
"""
from mpt_jax.ticket.cli import main
from mpt_jax.ticket.core import BN_DTYPES, MODES, LayerTicket, Ticket, TicketError, build_model
from mpt_jax.ticket.format import HEADER_BYTES, load_ticket, parse_ticket_bytes, save_ticket, \
    ticket_bytes, ticket_from_bytes
from mpt_jax.ticket.freeze import layer_tickets, make_ticket, training_kernels
from mpt_jax.ticket.inference import compare_with_run, evaluate_batches, inference_model, \
    predict_fn, probe_layers
from mpt_jax.ticket.run import checkpoint_bytes, run_image_shape, ticket_from_run
from mpt_jax.ticket.seed import init_variables, key_info, regenerate_frozen, run_init_key
from mpt_jax.ticket.summary import summary, summary_table

__all__ = [
    "BN_DTYPES", "HEADER_BYTES", "MODES", "LayerTicket", "Ticket", "TicketError", "build_model",
    "checkpoint_bytes", "compare_with_run", "evaluate_batches", "inference_model", "init_variables",
    "key_info", "layer_tickets", "load_ticket", "main", "make_ticket", "parse_ticket_bytes",
    "predict_fn", "probe_layers", "regenerate_frozen", "run_image_shape", "run_init_key",
    "save_ticket", "summary", "summary_table", "ticket_bytes", "ticket_from_bytes",
    "ticket_from_run", "training_kernels",
]

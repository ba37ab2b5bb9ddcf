"""mpt_jax: biprop (Multi-Prize Lottery Tickets) in JAX/Flax.

Importing the package never imports TensorFlow or torch.
"""
__version__ = "0.1.0"

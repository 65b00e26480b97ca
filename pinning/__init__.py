"""pinbench: upfront vs demand pinning of SEV guest memory in KVM, modelled and measured."""

__version__ = "0.1.0"

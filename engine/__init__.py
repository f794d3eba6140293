"""sarco-engine: lumbar CT/MRI to cohort-level muscle/fat habitats and sarcopenia prediction."""
__version__ = "0.1.0"

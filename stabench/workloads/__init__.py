"""Workloads: the datasets a trial trains on and is scored against (`data`: digits, cifar10, folder)."""

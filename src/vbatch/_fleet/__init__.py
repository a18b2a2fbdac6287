"""Fleets hold the servers a job uses and list the ones that can take requests now."""

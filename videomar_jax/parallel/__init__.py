"""Scale-out: the device mesh, logical-axis sharding rules, sharded train state and steps,
and multi-process initialisation."""

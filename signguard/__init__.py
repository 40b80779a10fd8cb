"""signguard: the application (CLI, subcommands, demo).  It imports the layers; none of them imports it."""

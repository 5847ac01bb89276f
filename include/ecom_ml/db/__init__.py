"""The shop's orders database: the project-local server, its schema migrations and connections."""

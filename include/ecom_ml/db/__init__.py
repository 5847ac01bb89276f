"""The shop's orders database: the project-local server, its schema migrations and connections."""

import re


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)

"""A tiny MCP server over stdio for the MCP tests (run as a subprocess): ``add`` adds, ``fail``
always fails (the server answers ``isError``)."""

from mcp.server.fastmcp import FastMCP

server = FastMCP("calculator")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@server.tool()
def fail(why: str) -> str:
    """Always fails."""
    raise ValueError(why)


if __name__ == "__main__":
    server.run("stdio")

from avn_node.cli import app

app(prog_name="avn-node")

from driftd.cli import console

console()

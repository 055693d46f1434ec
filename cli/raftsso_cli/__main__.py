# ``python -m raftsso_cli`` is the console script (raftsso_cli.launch: --version and a plain
# status answered without click, everything else through click).
from raftsso_cli.launch import main

main()

"""PyInstaller entry point of the ``minerwatch`` executables: the same CLI as the console script."""

from agent.cli.main import main

if __name__ == "__main__":
    main()

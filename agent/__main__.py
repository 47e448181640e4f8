"""``python -m agent`` behaves like ``minerwatch``."""

from agent.cli.main import main

if __name__ == "__main__":
    main()

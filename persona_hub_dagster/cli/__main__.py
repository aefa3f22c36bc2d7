"""`python -m persona_hub_dagster.cli`: the persona-hub command."""

import sys

from persona_hub_dagster.cli import main

sys.exit(main())

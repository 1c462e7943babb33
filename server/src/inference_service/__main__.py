import sys

from inference_service.cli import main

sys.exit(main())

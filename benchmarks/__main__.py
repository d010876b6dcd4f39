import sys

from splitfed.bench import main

sys.exit(main())

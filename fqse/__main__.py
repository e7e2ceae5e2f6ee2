from fqse.cli import main
import sys
sys.exit(main())

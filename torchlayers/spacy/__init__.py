"""What only spaCy needs: architectures, encoders and components built on the combinators.

Importing `torchlayers` never imports this package; importing it without spaCy installed
raises ImportError only where a module needs spaCy itself.
"""

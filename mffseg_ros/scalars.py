"""Parsing of scalar option values written as text ('3', '0.5', 'true', 'fold0-val'), shared by data specs
(`synth:?frames=64&hflip=off`) and NAME:=VALUE node parameters."""

TRUE_WORDS = ('true', 'yes', 'on')
FALSE_WORDS = ('false', 'no', 'off')


def parse_scalar(text):
    """int, else float, else bool (true/yes/on, false/no/off, any case), else the text itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    low = text.lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    return text

"""Answer normalisation exactly as the official VQA tools do it.

Two processors exist and both are needed:

* ``vqa_*``: the GT-Vision-Lab ``vqaEval.py`` that EvalAI runs for VQAv2.
* ``evalai_process``: the MMF ``EvalAIAnswerProcessor`` (LLaVA's ``m4c_evaluator``), which
  LLaVA applies to VQAv2 predictions before submission and TextVQA applies to predictions
  *and* ground truths.

Their quirks are kept on purpose (see docs/eval-data.md and the scoring rules): the period
regex whose look-behind is malformed, the ``re.UNICODE`` passed where ``count`` belongs, and
the upper-case contraction keys that can never match after lower-casing.
"""
import re

# Order matters: the official loop walks this list and decides per symbol.
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!"]

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

ARTICLES = ("a", "an", "the")

# The official table, written out as "key value" pairs. Keys that start with a capital
# ("Im", "Ive", "Id've", "I'dve") are unreachable after lower-casing; they stay for fidelity.
_CONTRACTION_PAIRS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's
howd how'd|howll how'll|hows how's|Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd
itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't
mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've
neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at
'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll
someones someone's|somethingd something'd|somethingd've something'd've|something'dve something'd've
somethingll something'll|thats that's|thered there'd|thered've there'd've|there'dve there'd've
therere there're|theres there's|theyd they'd|theyd've they'd've|they'dve they'd've|theyll they'll
theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've
werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's|whered where'd
wheres where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't
wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll
yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've
you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(
    pair.split(" ") for pair in _CONTRACTION_PAIRS.replace("\n", "|").split("|") if pair.strip()
)

# "(?!<=\d)" is a look-ahead, not a look-behind, so it never fires in front of a ".": every
# period not followed by a digit goes. Kept verbatim because the published numbers depend on it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official script passes re.UNICODE (== 32) as the ``count`` argument of sub().
_PERIOD_COUNT = int(re.UNICODE)
_COMMA_STRIP_VQA = re.compile(r"(\d)(\,)(\d)")          # vqaEval.py
_COMMA_STRIP_MMF = re.compile(r"(?<=\d)(\,)+(?=\d)")    # MMF EvalAIAnswerProcessor


def _punctuation(text, comma_re):
    out = text
    digit_comma = comma_re.search(text) is not None
    for p in PUNCTUATION:
        # The test looks at the *input* text, the edit applies to the running output.
        if (p + " " in text or " " + p in text) or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_COUNT)


def vqa_process_punctuation(text):
    """``processPunctuation`` of the official vqaEval.py."""
    return _punctuation(text, _COMMA_STRIP_VQA)


def vqa_process_digit_article(text):
    """``processDigitArticle``: lower-case, number words to digits, drop articles, contractions."""
    words = []
    for w in text.lower().split():
        w = NUMBER_WORDS.get(w, w)
        if w not in ARTICLES:
            words.append(w)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def vqa_normalize_prediction(text):
    """vqaEval.py's full processing of an answer: whitespace, punctuation, then numbers,
    articles and contractions (the official script applies it to both sides only when the ten
    ground truths differ; see scorers.vqa_accuracy)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_process_digit_article(vqa_process_punctuation(text))


def evalai_process(text):
    """MMF ``EvalAIAnswerProcessor.__call__`` (used by LLaVA for VQAv2 upload and TextVQA)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _punctuation(text, _COMMA_STRIP_MMF)
    return vqa_process_digit_article(text)

"""The labelling rules of the contextual-token sets: token -> one :class:`Rule` per meaning.

Each rule is a snippet kind (``line`` of code or technical text, ``sentence`` of prose),
the corpus domains it draws from, a regular expression the snippet must match, and one it
must not. Rules of one token are written to be disjoint, and a sample is kept only when it
contains the token exactly once (see contextual_build.py), so a sample's one target
occurrence carries the rule's meaning. The patterns are deliberately narrow: precision
over recall, the corpus is large enough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the builder imports this module: no import back at run time
    from moe_lib.data.contextual_build import Snippet

PROSE_DOMAINS = frozenset({"speech", "literary", "dictionary"})


@dataclass(frozen=True)
class Rule:
    """How to recognise one meaning of a token in a snippet."""

    label: str
    description: str
    kind: str  # "line", "sentence" or "any"
    domains: frozenset
    pattern: str
    exclude: str | None = None
    previous: str | None = None  # the line before the snippet must match this

    def accepts(self, snippet: Snippet) -> bool:
        if self.kind not in ("any", snippet.kind) or snippet.domain not in self.domains:
            return False
        if not re.search(self.pattern, snippet.text):
            return False
        if self.previous is not None and not re.search(self.previous, snippet.previous):
            return False
        return self.exclude is None or not re.search(self.exclude, snippet.text)


CODE = frozenset({"code"})
TECH = frozenset({"technical"})
SPEECH = frozenset({"speech"})
LITERARY = frozenset({"literary", "dictionary"})
PROSE = PROSE_DOMAINS
EVERY_PROSE = PROSE | TECH
# reStructuredText roles, literal blocks and links: not plain prose.
RST_MARKUP = r"`|::|https?:|\.\. "

RULES: dict[str, list[Rule]] = {
    ":": [
        Rule("block opener", "Python: ends the header of a def/class/if/for/while/with/try block",
             "line", CODE, r"(?m)^\s*(def|class|if|elif|else|for|while|with|try|except|finally)\b.*:$"),
        Rule("annotation", "Python: separates a name from its type annotation (name: int)",
             "line", CODE, r"^\s*[a-z_][\w.]*: [A-Za-z_][\w.]*(\[[\w., |\[\]]*\])?( \| [\w.]+)*( = .*)?$",
             r"^\s*(def|class|if|elif|else|for|while|with|try|except|finally|lambda|return)\b"),
        Rule("prose colon", "prose: introduces a list, a quotation or an explanation",
             "sentence", PROSE, r"[a-z]: [\"A-Za-z]", RST_MARKUP + r"|^(Syn|Note|Usage|See)\b"),
    ],
    "#": [
        Rule("python comment", "Python: starts a comment on its own line",
             "line", CODE, r"^\s*# [A-Za-z]"),
        Rule("c preprocessor", "C in kernel docs: starts a preprocessor directive (#include, #define, ...)",
             "line", TECH, r"^\s*#(include|define|ifdef|ifndef|endif|undef|if|else|elif)\b"),
        Rule("root shell prompt", "shell in kernel docs: the root prompt before a command",
             "line", TECH,
             r"^\s*# (echo|cat|mount|modprobe|insmod|rmmod|ls|cd|mkdir|ip|ethtool|perf|dmesg|sysctl|umount|"
             r"chmod|cp|rm|grep|find|make|git|\./)\b"),
    ],
    " $": [
        Rule("shell prompt", "shell in docs: the user prompt before a command",
             "line", TECH, r"^\s*\$ [a-z./]"),
        Rule("currency", "speeches: the dollar sign before an amount",
             "sentence", SPEECH, r"\$\d"),
        Rule("shell variable", "shell and make in docs: expands a variable ($HOME, ${ARCH}, $(CC))",
             "line", TECH, r"\$(\{|\()?[A-Za-z_]{2,}", r"^\s*\$ "),
    ],
    "@": [
        Rule("decorator", "Python: applies a decorator to the next def or class",
             "line", CODE, r"(?m)^@[A-Za-z_][\w.]*(\(.*\))?$"),
        Rule("email address", "the at sign inside an e-mail address",
             "line", TECH | CODE, r"[\w.+-]+@[\w-]+\.[\w.-]+", r"\w@[\w-]+:"),
        Rule("user at host", "shell prompts and ssh: separates a user name from a host name (root@host:~#)",
             "line", TECH, r"\b\w+@[\w-]+:[~/\w]"),
    ],
    ".": [
        Rule("sentence end", "prose: ends a sentence",
             "sentence", PROSE, r"[a-z]\.$", r"\d\.\d|[A-Za-z]\.[A-Za-z]"),
        Rule("attribute access", "Python: reaches an attribute or method of an object or module",
             "line", CODE, r"^\s*[a-z_]\w*\.[a-z_]\w*\(", r"['\"#]"),
        Rule("numeric dot", "between digits: a decimal fraction or a version number (0.5, 3.11)",
             "line", CODE | TECH, r"(?<![\w.])\d+\.\d+(?![\w.])"),
    ],
    ",": [
        Rule("prose comma", "prose: separates clauses or items of a list",
             "sentence", LITERARY | SPEECH, r"[a-z], [a-z]", r"\d,\d"),
        Rule("argument separator", "Python: separates the arguments of a call or definition",
             "line", CODE, r"^\s*(def )?[\w.]+\(\w+, \w+\):?$"),
        Rule("thousands separator", "speeches: groups the digits of a large number",
             "sentence", SPEECH, r"\d,\d{3}"),
    ],
    "=": [
        Rule("keyword argument", "Python: passes an argument by name in a call",
             "line", CODE, r"\w\(.*[a-z_]=[\w'\"]", r" = |==|!=|<=|>="),
        Rule("upper-case assignment", "kernel docs: sets a config option, environment variable or constant (CONFIG_X=y)",
             "line", TECH, r"^\s*[A-Z][A-Z0-9_]+=\S"),
        Rule("command-line option value", "docs: gives a value to a long command-line option (--opt=value)",
             "line", TECH, r"--[\w-]+=\S"),
    ],
    " {": [
        Rule("c function body", "C in kernel docs: opens a function body on its own line",
             "line", TECH, r"(?m)^\s*\{$"),
        Rule("dictionary cross-reference", "GCIDE markup: opens a cross-reference to another entry ({Bar})",
             "sentence", frozenset({"dictionary"}), r"\{[A-Z][a-z]+\}"),
        Rule("format placeholder", "Python: a replacement field in a format string",
             "line", CODE, r"['\"][^'\"]*\{[\w.]*(![rsa])?(:[^}]*)?\}[^'\"]*['\"]\.format\("),
        Rule("dict literal", "Python: opens a dict or set literal",
             "line", CODE, r"(=|return|\() ?\{['\"\w]", r"\.format\(|f['\"]"),
    ],
    " *": [
        Rule("c comment continuation", "C in kernel docs: the star that continues a block comment",
             "line", TECH, r"^ +\* \S", None, r"^\s*/\*"),
        Rule("list bullet", "reStructuredText: marks an item of a bulleted list",
             "line", TECH, r"^ +\* \S", r"/\*|\*/", r"^\s*$"),
        Rule("pointer declaration", "C in kernel docs: declares a pointer (struct foo *bar)",
             "line", TECH, r"\b(struct \w+|int|char|void|u8|u16|u32|u64|long|unsigned) \*\w", r"^\s*\*|/\*"),
        Rule("multiplication", "Python: multiplies two numbers",
             "line", CODE, r"[\w)\]] \* [\w(]", r"^\s*#|import"),
    ],
    "~": [
        Rule("home directory", "shell: the user's home directory (~/...)",
             "line", TECH, r"~/"),
        Rule("bitwise not", "Python: inverts the bits of an integer (~mask)",
             "line", CODE, r"~\s?\(?[A-Za-z_]\w*", r"['\"#]"),
        Rule("approximately", "docs: about, roughly (~100 ms)",
             "any", TECH, r"(?<![\w~])~ ?\d", r"[=&|(,]\s*~|~ ?0\b|;\s*$"),
    ],
    "%": [
        Rule("python format", "Python: a %-format conversion in a string (%s, %d, %r)",
             "line", CODE, r"%[-#0-9.]*[sdrfxi](?![a-z])"),
        Rule("percent sign", "prose: per cent after a number",
             "sentence", EVERY_PROSE, r"\d%"),
        Rule("assembler register", "x86 assembly in kernel docs: prefixes a register name (%rax)",
             "line", TECH, r"%(r|e)?([a-d]x|[sb]p|[sd]i|ip)\b|%r\d+\b|%[cdefgs]s\b"),
    ],
    " bank": [
        Rule("finance", "an institution that keeps and lends money",
             "sentence", SPEECH, r".", r"\b(river|Rio|shore|stream|creek|left bank|right bank|east bank|west bank)\b"),
        Rule("river bank", "the sloping land beside water, or a mass of sand, cloud or snow",
             "sentence", LITERARY,
             r"\b(river|stream|sea|shore|water|sand|fog|cloud|snow|grass|green|ocean|lake|fish\w*|mud|steep|earth|Newfoundland|side)\w*\b",
             r"\b(money|deposit|notes?|currency|credit|bills?|banker)\b"),
        Rule("hardware bank", "computing: a group of memory cells, registers or pins",
             "any", TECH | CODE, r"."),
    ],
    " key": [
        Rule("mapping key", "Python: the key of a dict or mapping entry",
             "sentence", TECH, r"\b(dict|dictionary|mapping|value|sort|lookup|cache)\w*\b",
             r"\b(crypt\w*|cipher|sign\w*|keyring|press\w*|keyboard|RSA|public|private|secret)\b"),
        Rule("cryptographic key", "security: a secret used to encrypt, sign or verify",
             "sentence", TECH, r"\b(crypt\w*|cipher|sign\w*|keyring|RSA|public|private|secret|TPM)\b",
             r"\b(dict|dictionary|mapping|press\w*|keyboard)\b"),
        Rule("important", "speeches: crucial, or what opens the way (a key role, the key to)",
             "sentence", SPEECH, r"."),
    ],
    " class": [
        Rule("python class", "Python: a class definition or object type",
             "sentence", TECH, r"\b(method|instance|attribute|object|subclass|inherit\w*|base)\b"),
        Rule("social class", "a stratum of society (middle class, working class)",
             "sentence", SPEECH | LITERARY,
             r"\b(middle|working|laboring|labouring|lower|upper|wealthy|poorer|ruling|leisure|propertied|servile|privileged) class\b"),
        Rule("category", "dictionary: a division of things by kind (a class of animals or words)",
             "sentence", frozenset({"dictionary"}), r".",
             r"\b(middle|working|laboring|labouring|lower|upper|wealthy|poorer|ruling|leisure|propertied|servile|privileged) class\b"),
    ],
    " table": [
        Rule("data structure", "computing: a table in memory (page table, hash table, lookup table)",
             "sentence", TECH, r"\b(page|hash|lookup|symbol|routing|translation|interrupt|descriptor|jump|partition)\s+table\b"),
        Rule("document table", "a table of rows and columns in a document",
             "sentence", TECH, r"\b(following|this|above|below|the)\s+table\s+(below|above|shows|lists|describes|contains|of)\b"),
        Rule("furniture", "a piece of furniture with a flat top",
             "sentence", LITERARY, r"\b(sat|sit|sitting|chair|dinner|supper|tea|cloth|on the table|at the table|round the table)\b"),
    ],
    " state": [
        Rule("say", "the verb: to declare or set out in words (to state that)",
             "sentence", SPEECH | LITERARY, r"\b(to|I|we|shall|must|may|will|can|should|would) state\b"),
        Rule("condition", "the condition something is in (the state of the Union, of affairs)",
             "sentence", SPEECH | LITERARY, r"\bstate of (the|our|things|affairs|war|peace|society|nature)\b",
             r"\bstate of [A-Z]"),
        Rule("machine state", "computing: the stored condition of a device, process or object",
             "sentence", TECH, r"."),
    ],
    " power": [
        Rule("political power", "speeches: authority, control or strength of a government or people",
             "sentence", SPEECH, r".", r"\b(electric\w*|energy|nuclear|plants?|water|steam|horse|boats?|engines?|motors?)\b"),
        Rule("electrical power", "computing: electric supply to hardware (power management, power off)",
             "sentence", TECH, r"\b(power (management|supply|consumption|off|on|domain|state|saving|down|up|button|rail))\b"),
        Rule("exponent", "mathematics: a number raised to an exponent (a power of two)",
             "sentence", TECH | frozenset({"dictionary"}),
             r"\b(power of (two|2|ten|10|\d+|x|n)|to the \w+ power|raised to|exponent\w*|(second|third|fourth|fifth|nth|\d+th) power)\b"),
    ],
    " interest": [
        Rule("money interest", "the charge for borrowed money",
             "sentence", SPEECH, r"\b(interest (on|rates?|charges?|payments?|paid|due|bearing)|rate of interest|bearing interest)\b"),
        Rule("advantage", "what is good for someone (the public interest, in the interest of)",
             "sentence", SPEECH, r"\b((public|national|common|best|general|own|his|their|our) interest|in the interest of)\b"),
        Rule("curiosity", "attention, concern or curiosity about something",
             "sentence", SPEECH | LITERARY,
             r"\bwith (great |much |deep |lively |keen |intense )?interest\b"
             r"|\b(great|deep|keen|lively|special|particular|much|little|no|an|of|general|public|growing) interest in\b"
             r"|\bof interest to\b",
             r"\b(rates?|debt\w*|loans?|bonds?|per cent|percent|burden|paid|pay\w*|charges?|principal|treasury|money)\b"
             r"|\b(pecuniary|real|financial|own|their|our|his|her|its|vested|controlling) interest\b"
             r"|\binterest in the (company|firm|property|land|business|estate|stock|road|enterprise)\b"),
    ],
    " return": [
        Rule("return statement", "Python: gives a function's result back to its caller",
             "line", CODE, r"^\s+return\b"),
        Rule("come back", "prose: to go or come back to a place or state",
             "sentence", SPEECH | LITERARY, r"\breturn (to|home|from)\b", r"\b(tax|investment|profit|rate)\b"),
        Rule("return value", "docs: the noun in 'return value', 'return type', 'return code'",
             "sentence", TECH, r"\breturn (value|type|code|address|status)\b"),
    ],
    " type": [
        Rule("data type", "Python: the type of an object or value",
             "sentence", TECH, r"\b(object|int|str|value|argument|return|class|annotation|Python)\b"),
        Rule("specimen or emblem", "dictionary: a model specimen of a group, or a symbol (Biol. type)",
             "sentence", frozenset({"dictionary"}), r"\b(Biol|Zo[öo]l|Bot|genus|species|typical|symbol|emblem|model|pattern)\b",
             r"\b(print\w*|letter|font|face|metal|cast|compos\w*)\b"),
        Rule("printing type", "dictionary: a block bearing a letter, used in printing",
             "sentence", frozenset({"dictionary"}), r"\b(print\w*|letter|font|face|metal|cast|compos\w*)\b"),
    ],
    " order": [
        Rule("purpose", "in order to / in order that: for the purpose of",
             "sentence", SPEECH | LITERARY, r"\bin order (to|that)\b"),
        Rule("sequence", "computing: an arrangement in sequence (byte order, sort order, in order)",
             "sentence", TECH, r"\b(byte|sort\w*|reverse|same|insertion|alphabetical|ascending|descending|memory|lock) order\b",
             r"\bin order (to|that)\b"),
        Rule("taxonomic order", "biology: a rank of classification above the family",
             "sentence", frozenset({"dictionary"}),
             r"\border\b[^.;]{0,40}\b(birds?|insects?|mammals?|plants?|fish(es)?|animals?|reptiles?|mollusks?|crustaceans?)\b"
             r"|\border \{?[A-Z][a-z]+(a|ae|ia)\}?",
             r"\bin order\b"),
    ],
    " field": [
        Rule("data field", "computing: a named member of a structure or record",
             "sentence", TECH, r"."),
        Rule("open land", "an open piece of land, or a battlefield",
             "sentence", LITERARY, r"\b(grass|corn|wheat|farm\w*|plough\w*|flowers?|green|meadow|battle|plant\w*|crops?|sow\w*)\b"),
        Rule("area of activity", "speeches: a sphere of activity or study (in the field of)",
             "sentence", SPEECH, r"."),
    ],
    " branch": [
        Rule("code branch", "computing: a line of development in version control, or a jump in code",
             "sentence", TECH, r"."),
        Rule("tree branch", "a limb growing from the trunk of a tree",
             "sentence", LITERARY, r"\b(tree|trunk|leaves|leaf|twig|bough|stem|bird|flower\w*|fruit|shoot)\b"),
        Rule("division", "speeches: a division of an organisation (branch of government or service)",
             "sentence", SPEECH, r"."),
    ],
    " object": [
        Rule("programming object", "computing: an instance of a class, or a kernel data object",
             "sentence", TECH, r"."),
        Rule("purpose", "speeches: an aim or purpose (the object of this law)",
             "sentence", SPEECH, r"\b(the|an|its|their|our|my|his) object\b"),
        Rule("thing or grammar object", "dictionary: a thing perceived, or the object of a verb",
             "sentence", frozenset({"dictionary"}), r"."),
    ],
    " pipe": [
        Rule("unix pipe", "computing: a channel from one process's output to another's input",
             "any", TECH | CODE, r"."),
        Rule("tube", "a tube carrying water, gas or steam",
             "sentence", LITERARY | SPEECH, r"\b(water|gas|drain|iron|lead|steam|oil|sewer|conduct\w*|tube|pump|fluid)\b",
             r"\b(smok\w*|tobacco|organ|music\w*|tune|tabor|shepherd|whistle)\b"),
        Rule("musical pipe", "a wind instrument, or an organ pipe",
             "sentence", LITERARY | SPEECH, r"\b(organ|music\w*|play\w*|tune|tabor|shepherd|whistle|notes?|sound\w*|flute|reed)\b",
             r"\b(smok\w*|tobacco|water|gas|drain|steam|oil)\b"),
    ],
    " bill": [
        Rule("legislation", "speeches: a draft law before a legislature",
             "sentence", SPEECH, r"\b(pass\w*|Congress|Senate|House|legislat\w*|sign\w*|veto\w*|enact\w*|law|act)\b",
             r"\b(bank|notes?|dollars?|paper money|exchange)\b"),
        Rule("bank note or account", "a piece of paper money, a bill of exchange, or an account of charges",
             "sentence", SPEECH | LITERARY, r"\b(bank|notes?|dollars?|paper money|exchange|pay\w*|currency|credit|debts?)\b",
             r"\b(Congress|Senate|veto\w*|enact\w*|beak|birds?)\b"),
        Rule("beak", "the beak of a bird",
             "sentence", LITERARY, r"\b(beak|birds?|duck|hooked|feathers?|plumage|mandibles?|crest|genus)\b",
             r"\b(bank|notes?|dollars?|money|exchange|pay\w*|Congress)\b"),
    ],
}

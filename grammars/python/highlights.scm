(comment) @comment
(string) @string
[(integer) (float)] @number
[(true) (false) (none)] @constant
(function_definition name: (identifier) @function)
(call function: (identifier) @function)
(call function: (attribute attribute: (identifier) @function))
(class_definition name: (identifier) @type)
(type (identifier) @type)
["def" "class" "if" "elif" "else" "for" "while" "return" "import" "from" "as" "with" "try"
 "except" "finally" "raise" "pass" "break" "continue" "lambda" "yield" "in" "not" "and" "or" "is"
 "global" "nonlocal" "assert" "del" "async" "await"] @keyword

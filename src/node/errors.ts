/**
 * The one error shape of the node layer: an Error with a stable, typed `code` (tests and callers
 * match on the code, never on message text) and the subclass's name. Each component declares the
 * codes it can throw as a union, so a misspelt code is a compile error.
 */
export class CodedError<C extends string> extends Error {
  readonly code: C;
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

# weir's Ruby runner: loaded once when the `ruby` runtime is pre-initialized, so every run
# starts with it. The host calls `Weir.run`, `Weir.cell` and `Weir.repl` through
# `rb_eval_string_protect`, the source passed as base64 (no quoting to get wrong), and reads
# what they return: an exit status, a value's `inspect`, the last uncaught exception.
$stdout.sync = true
$stderr.sync = true

# There are no processes in the sandbox: what would start one says so, instead of ruby.wasm's
# silent nil (`Process.spawn`) or bogus true (`system`).
module Kernel
  NO_PROCESSES = "weir's sandbox has no processes"
  %i[system spawn exec fork ` ].each do |name|
    define_method(name) { |*| raise NotImplementedError, "#{name}(): #{NO_PROCESSES}" }
    private name
  end
end
class << Process
  %i[spawn exec fork daemon].each do |name|
    define_method(name) { |*| raise NotImplementedError, "Process.#{name}: #{Kernel::NO_PROCESSES}" }
  end
end
class << IO
  define_method(:popen) { |*| raise NotImplementedError, "IO.popen: #{Kernel::NO_PROCESSES}" }
end

module Weir
  @error = nil
  @cells = 0

  class << self
    # The exception the last run or cell did not catch: "Class\nmessage", or "" for none.
    def error
      @error || ""
    end

    # The run's arguments and environment (base64, as the source): `ARGV`, `ENV`, `$0`.
    def start(file, args, env)
      decode = ->(s) { s.unpack1("m0").force_encoding(Encoding::UTF_8) }
      ARGV.replace(args.map(&decode))
      ENV.clear
      env.each_slice(2) { |k, v| ENV[decode.(k)] = decode.(v) }
      $0 = file
      0
    end

    # Runs a program as `ruby FILE` does, in the top-level binding; its exit status.
    def run(b64, file)
      @error = nil
      source = b64.unpack1("m0").force_encoding(Encoding::UTF_8)
      depth = caller_locations(0).size
      begin
        eval(source, TOPLEVEL_BINDING, file, 1)
        0
      rescue SystemExit => e
        e.status
      rescue Exception => e
        report(e, depth, file)
        1
      ensure
        $stdout.flush rescue nil
      end
    end

    # Runs a session's cell in the top-level binding (its local variables stay for the next
    # cells): "=" and its value's `inspect`, or "" for nil or an exception (`error` says
    # which).
    def cell(b64)
      @error = nil
      @cells += 1
      name = "(cell #{@cells})"
      source = b64.unpack1("m0").force_encoding(Encoding::UTF_8)
      depth = caller_locations(0).size
      begin
        value = eval(source, TOPLEVEL_BINDING, name, 1)
        TOPLEVEL_BINDING.local_variable_set(:_, value) rescue nil
        value.nil? ? "" : "=#{value.inspect}"
      rescue SystemExit => e
        @exit = e.status
        ""
      rescue Exception => e
        report(e, depth, name)
        ""
      ensure
        $stdout.flush rescue nil
      end
    end

    # A session's `exit`: its status, once (-1 when the last cell did not exit).
    def exit_status
      status, @exit = @exit, nil
      status || -1
    end

    # An interactive console after the program, as `irb` shows it: `>> `, `.. ` for a
    # continued statement, `=> value`; an exception or an interrupt is printed and it goes on.
    def repl
      line_no = 0
      loop do
        source = read_statement
        return 0 if source.nil?
        line_no += 1
        depth = caller_locations(0).size
        begin
          value = eval(source, TOPLEVEL_BINDING, "(irb)", line_no)
          $stdout.write("=> #{value.inspect}\n")
        rescue SystemExit => e
          return e.status
        rescue Interrupt => e
          $stderr.write("Interrupt\n")
        rescue Exception => e
          report(e, depth, "(irb)")
          @error = nil
        end
      end
    end

    private

    # Lines read (after a prompt) until they parse, or nil at the end of stdin.
    def read_statement
      source = +""
      loop do
        $stdout.write(source.empty? ? ">> " : ".. ")
        line = begin
          $stdin.gets
        rescue Interrupt
          $stdout.write("\n")
          source = +""
          next
        end
        if line.nil?
          $stdout.write("\n") if source.empty?
          return source.empty? ? nil : source
        end
        source << line
        next if source.strip.empty? && (source = +"")
        return source unless incomplete?(source)
      end
    end

    def incomplete?(source)
      RubyVM::InstructionSequence.compile(source)
      false
    rescue SyntaxError => e
      e.message.match?(/unexpected end-of-input|end-of-input|unterminated|expected an? `?end|expected a matching/)
    end

    # Prints an uncaught exception as `ruby` does, without the runner's own frames, and keeps
    # its class and message for the run's outcome.
    def report(e, depth, file)
      backtrace = e.backtrace
      backtrace = backtrace ? backtrace[0, [backtrace.size - depth - 1, 0].max] : []
      # As ruby shows a deep one (SystemStackError): its top, the count left out, its bottom.
      if backtrace.size > 30
        backtrace = backtrace[0, 20] + [" ... #{backtrace.size - 24} levels..."] + backtrace[-4..]
      end
      e.set_backtrace(backtrace.empty? ? [file] : backtrace)
      $stderr.write(e.full_message(highlight: false, order: :top))
      $stderr.flush
      @error = "#{e.class.name}\n#{e.message}"
    rescue Exception
      @error = "#{e.class.name}\n"
    end
  end
end

// C++ fixture for test-symbolize: an always_inline member function expanded into a
// noinline one, so names must come out qualified with their parameter lists.  Never run.
#include <cstdio>

namespace ns {

class Class {
public:
        explicit Class(int k) : k_(k) {}
        __attribute__((always_inline)) inline int method(volatile int *p, int n) const
        {
                int s = 0;
                for (int i = 0; i < n; i++)
                        s += p[i] * k_; // @cpp-method-body
                return s;
        }
        __attribute__((noinline)) int run(volatile int *p, int n) const;

private:
        int k_;
};

int Class::run(volatile int *p, int n) const
{
        return method(p, n) + 1; // @cpp-run-call
}

} // namespace ns

int main()
{
        volatile int v[4] = { 1, 2, 3, 4 };
        ns::Class c(3);
        std::printf("%d\n", c.run(v, 4));
        return 0;
}
